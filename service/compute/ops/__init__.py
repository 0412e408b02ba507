"""The differentiable ops: the registry (``registry``), the activations, the losses and the
formula language's function table (``functions``), each op one entry."""
