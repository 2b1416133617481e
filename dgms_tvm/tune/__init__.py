"""MetaSchedule tuning of a model's kernels (above the compile core, which never imports it):
the tasks and their search (:mod:`.tuner`), a whole run within a budget (:mod:`.driver`,
:mod:`.budget`), re-measuring shipped records (:mod:`.remeasure`)."""
