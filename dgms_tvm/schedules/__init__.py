"""How each kernel gets its schedule, in one place: a tuned record where the target's
database holds one for it (:mod:`.apply_records`, records in :mod:`.tuning_db`), else its
hand schedule from the knobs (:mod:`.hand`), else TVM's default."""

from .hand import SCHEDULE_DIR, apply_schedules, capability_knobs, load_knobs, schedule_file

__all__ = ["SCHEDULE_DIR", "apply_schedules", "capability_knobs", "load_knobs",
           "schedule_file"]
