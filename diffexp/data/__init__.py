"""Ground-truth images: loaders (``conf/data/``), value-range conversion, the bundled MNIST subset."""
