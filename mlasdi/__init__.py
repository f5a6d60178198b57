"""mlasdi: multi-stage latent space dynamics identification (mLaSDI) and GPLaSDI."""

__version__ = "0.1.0"
