"""The embedded demo model's recipe (docs/demo-model.md): data.py (espeak-ng clips), train.py, package.py (export
into qasr_live/models/demo), evaluate.py; build.sh runs them all. Run each as ``python -m training.demo_model.X``
from the repository root."""
