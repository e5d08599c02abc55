"""llmos-jobs: run large language models as shared infrastructure."""

__version__ = "0.1.0"
