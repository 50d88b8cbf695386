"""The motion-aware renderer's trainer (``avatar4d train renderer``): a Task + recipes on the shared engine."""
