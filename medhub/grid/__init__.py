"""The benchmark grid: checkpoints x tasks x label fractions x seeds, run and stored as cells.

Research software, not a medical device: never use its outputs for clinical decisions.

Modules, one per step:

- :mod:`medhub.grid.cells` expands a grid into :class:`~medhub.grid.cells.Cell` s (one ``reproduce`` run each);
- :mod:`medhub.grid.store` keeps every cell's status and full report in a SQLAlchemy database;
- :mod:`medhub.grid.runner` runs one cell in the current process (the seam that calls ``reproduce``);
- :mod:`medhub.grid.executors` runs cells in local worker processes or on a Ray cluster;
- :mod:`medhub.grid.run` ties them together (claim, dispatch, record, resume);
- :mod:`medhub.grid.analysis` turns stored cells into the matrix, significance tests and plots.

Importing this package is cheap: torch, ray, scipy and matplotlib are imported only where needed.
"""

from __future__ import annotations
