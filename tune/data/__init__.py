"""Data for tuning: load and validate records, clean and split them, tokenize for training."""
