"""The prior: the diffusers wrapper, noise schedules, ADM conversion, the Gaussian oracle, the MNIST classifier."""
