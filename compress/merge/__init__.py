"""merge: fold a LoRA adapter into its base model."""
