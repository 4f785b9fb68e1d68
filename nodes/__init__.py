"""The stages of an experiment, one module each: a function from state (and runtime) to an update."""
