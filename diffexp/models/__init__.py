"""The prior: the ``Prior`` protocol, the diffusers wrapper, noise schedules, ADM conversion, the Gaussian oracle,
the MNIST classifier."""
