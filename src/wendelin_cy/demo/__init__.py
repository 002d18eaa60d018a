"""Demos: ``python -m wendelin_cy.demo`` (or ``wendelin-cy-demo``).

* signal (default, ``demo.zbigarray``): a signal ``M*sin(f*t)`` of twice the
  RAM budget is ingested into a ZBigArray, then summed, averaged and binned
  with plain numpy on one view of the whole array; results are checked
  against the closed form and the generator's histogram;
* ``ml`` (``demo.ml_demo``): a labelled data set of twice the budget,
  ``SGDClassifier`` trained with ``wendelin_cy.ml.fit_incremental``,
  ``predict_into`` another ZBigArray, and a joblib map over batches ``X[i:j]``
  (views, which joblib sends by reference).

Defaults: budget 256 MiB, so the data is 512 MiB; a FileStorage in a
temporary directory, removed at the end; about 15-30 s on 2 cores.  Each run
prints the throughput of every phase and the peak RSS beside the budget, and
writes a PNG of memory over time (``--plot``).
"""
