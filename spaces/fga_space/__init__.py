"""What only the Feature-Gradient Attribution Space needs: this image's quick faithfulness scores."""

from .quick_metrics import QUICK_SETTINGS, quick_faithfulness

__all__ = ["QUICK_SETTINGS", "quick_faithfulness"]
