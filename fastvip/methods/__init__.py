"""Stage 3, methods: the models and heads, batched augmentation, mixing, losses and the objective."""
