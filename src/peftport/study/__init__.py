"""Studies: the paper's grid as a resumable, shared, distributed computation.

- `spec`: the study file (YAML or TOML), validated before anything runs;
- `plan`: the file expanded into work units that share what can be shared;
- `store`: SQLite (WAL) with the units, their status, metrics, artifacts and provenance;
- `units`: what one unit does (pure of the store: a payload in, a result out);
- `pairs`: before any unit, the hosts a study derives, every pair's host comparison and
  resolved layer map (stored in `comparisons` and `host_pairs`);
- `driver`: the one driver loop (claims units, feeds an executor, commits results);
- `executors`: where units run (in-process, local processes, Ray).

See docs/study.md for the file format, the presets and the sharing arithmetic.
"""

from peftport.study.plan import Plan, Unit, make_plan
from peftport.study.spec import StudySpec, load_preset, load_study, preset_names

__all__ = ["Plan", "StudySpec", "Unit", "load_preset", "load_study", "make_plan", "preset_names"]
