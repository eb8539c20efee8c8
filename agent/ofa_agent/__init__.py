"""ofactl's node agent: OFA visual entailment over HTTP with dynamic batching.

Importing the package is cheap; torch and modelscope load when an `engine.Engine` is made.
"""

__version__ = "0.1.0"
