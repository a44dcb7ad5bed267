"""distil: recover quality with knowledge distillation from a teacher."""
