"""Run Alibaba Cloud ECS instances from a Jupyter notebook."""

__version__ = "0.1.0"
