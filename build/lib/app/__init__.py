"""TransferLab: a self-hosted REST service for transfer learning on images."""

__version__ = "0.1.0"
