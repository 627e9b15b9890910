"""A study's progress, read from its store (what `peftport study status` prints)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peftport.errors import PeftportError


def study_status(store_path: Path, plan: Any = None) -> dict[str, Any]:
    """Progress of `plan`'s study in the store (or of every study in it, without a plan): units
    per status and kind, training steps done, units blocked by a failed one, the failed ones with
    their errors and the running ones with their drivers."""
    from peftport.study.store import Store

    if not store_path.exists():
        raise PeftportError(f"no study store at {store_path} (run `peftport study run` first)")
    st = Store(store_path)
    try:
        studies = []
        wanted = (
            [(plan.spec.id, plan.spec.name, [u.id for u in plan.units])]
            if plan
            else [(r["id"], r["name"], st.study_unit_ids(r["id"])) for r in st.studies()]
        )
        for sid, name, ids in wanted:
            rows = {r["id"]: r for r in st.unit_rows(ids)}
            counts = {s: 0 for s in ("done", "running", "pending", "failed")}
            counts["not in store"] = 0
            by_kind: dict[str, dict[str, int]] = {}
            steps_done = steps_total = 0
            for uid in ids:
                r = rows.get(uid)
                status = r["status"] if r else "not in store"
                counts[status] += 1
                if r:
                    k = by_kind.setdefault(r["kind"], {})
                    k[status] = k.get(status, 0) + 1
                    steps_total += r["steps"]
                    steps_done += r["steps"] if status == "done" else 0
            blocked = len(st.blocked(plan)) if plan else st.blocked_among(ids)
            studies.append(
                {
                    "id": sid,
                    "name": name,
                    "units": len(ids),
                    "status": counts,
                    "by_kind": by_kind,
                    "blocked": blocked,
                    "training_steps": {"done": steps_done, "total": steps_total},
                    "failed": [
                        {"id": r["id"], "label": r["label"], "error": r["error"]}
                        for r in rows.values()
                        if r["status"] == "failed"
                    ],
                    "running": [
                        {
                            "id": r["id"],
                            "label": r["label"],
                            "hostname": r["hostname"],
                            "pid": r["pid"],
                            "since": r["started_at"],
                        }
                        for r in rows.values()
                        if r["status"] == "running"
                    ],
                }
            )
        return {"store": str(store_path), "artifacts": str(st.root), "studies": studies}
    finally:
        st.close()
