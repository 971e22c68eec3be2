"""Training entry points: the MNIST DDPM (``python -m diffexp.training.ddpm``) and the MNIST classifier (``python -m diffexp.training.classifier``)."""
