"""jaxlm: pretraining and fine-tuning transformer language models in JAX/Flax."""
__version__ = "0.1.0"
