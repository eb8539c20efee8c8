"""ofactl: operate a hybrid-cloud fleet serving ModelScope's OFA visual-entailment model."""

__version__ = "0.1.0"
