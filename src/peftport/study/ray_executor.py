"""The Ray executor: each unit a plain Ray task, on a local Ray instance or a cluster.

Resources: each task asks for `threads` CPUs and, when the cluster has GPUs, `gpus_per_unit`
GPUs (default 1; a fraction such as 0.5 packs two units on a GPU). The unit runs on the device
Ray gave it: CUDA when `ray.get_gpu_ids()` is not empty (Ray sets CUDA_VISIBLE_DEVICES, so it
is cuda:0 in the task), else the CPU, even on a node with GPUs the task was not given (on a Mac
without CUDA: auto, so MPS where it is). A task
holding a GPU runs in a fresh worker process each time (Ray's default for GPU tasks,
max_calls=1), so no process reuses a CUDA context made for another GPU.

On a cluster (`address`), a task's environment is its node's: the driver passes the offline
switches, the thread count and OMP_WAIT_POLICY (PASSIVE unless set), never its own folders
($PEFTPORT_HOME, caches, $PEFTPORT_HOST_* / $PEFTPORT_DATA_*), so each node resolves hosts and
data in its own cache (see `executors.run_unit` for hosts the study derives).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from peftport.errors import PeftportError
from peftport.study.executors import WorkerLost, _env, run_unit


def _ray_execute(payload: dict) -> dict:
    import ray

    from peftport.device import ENV

    # the device follows what Ray gave the task: its GPU (as cuda:0), else not a GPU
    if ray.get_gpu_ids():
        os.environ[ENV] = "cuda"
    else:
        import torch

        if torch.cuda.is_available():  # a GPU on this node that Ray did not give the task
            os.environ[ENV] = "cpu"
        else:  # auto: the CPU (or Apple's MPS, which Ray does not hand out)
            os.environ.pop(ENV, None)
    out = run_unit(payload)
    ctx = ray.get_runtime_context()
    out["environment"]["ray_node"] = ctx.get_node_id()
    out["environment"]["ray_gpus"] = [str(g) for g in ray.get_gpu_ids()]
    return out


def gpu_request(gpus_per_unit: float | None, cluster_gpus: float) -> float:
    """The GPUs each task asks for: `gpus_per_unit` (default 1) when the cluster has GPUs,
    else 0 (CPUs only). One PeftportError line for a request that cannot work."""
    if gpus_per_unit is None:
        return 1.0 if cluster_gpus >= 1 else 0.0
    if gpus_per_unit <= 0:
        raise PeftportError(f"--gpus-per-unit must be > 0, got {gpus_per_unit:g}")
    if gpus_per_unit > 1 and gpus_per_unit != int(gpus_per_unit):
        raise PeftportError(
            f"--gpus-per-unit {gpus_per_unit:g}: above 1 it must be a whole "
            "number (Ray splits one GPU, not several)"
        )
    if cluster_gpus <= 0:
        raise PeftportError(
            f"--gpus-per-unit {gpus_per_unit:g} needs GPUs, and the Ray "
            "cluster has none (its units run on CPUs without the option)"
        )
    if gpus_per_unit > cluster_gpus:
        raise PeftportError(
            f"--gpus-per-unit {gpus_per_unit:g} is more than the cluster's {cluster_gpus:g} GPU(s)"
        )
    return float(gpus_per_unit)


class RayExecutor:
    """Plain Ray tasks; joins a cluster with `address`, else starts a local instance."""

    name = "ray"

    def __init__(
        self,
        workers: int | None = None,
        threads: int = 1,
        address: str | None = None,
        gpus_per_unit: float | None = None,
    ) -> None:
        try:
            import ray
        except ImportError:
            raise PeftportError("the ray executor needs Ray: pip install 'peftport[ray]'") from None
        from peftport.study.raylocal import LocalRay, clean_stale

        self.ray = ray
        self._started = False
        self._local: LocalRay | None = None
        if not ray.is_initialized():
            env = _env(paths=not address)  # a cluster's nodes keep their own folders
            env["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
            env["OMP_NUM_THREADS"] = str(threads)
            kw: dict[str, Any] = dict(
                include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env}
            )
            if address:
                kw["address"] = address
            else:
                # a Ray left running by a killed peftport driver: its processes end first
                clean_stale(lambda s: print(s, file=sys.stderr))
                if workers:
                    kw["num_cpus"] = workers * threads
            ray.init(**kw)
            self._started = True
            if not address:  # ours: shut down on every exit path, recorded for a later clean
                self._local = LocalRay(ray)
        try:
            resources = ray.cluster_resources()
            cluster_gpus = float(resources.get("GPU", 0))
            self.gpus = gpu_request(gpus_per_unit, cluster_gpus)
        except BaseException:
            self.close()
            raise
        cpus = int(resources.get("CPU", 1))
        self.capacity = workers or max(1, cpus // threads)
        if self.gpus and not workers:  # no more at a time than the GPUs hold
            self.capacity = min(self.capacity, max(1, int(cluster_gpus / self.gpus + 1e-9)))
        self.threads = threads
        self.where = (
            f" asking {self.gpus:g} GPU each of the cluster's {cluster_gpus:g}" if self.gpus else ""
        )
        self._fn = ray.remote(num_cpus=threads, num_gpus=self.gpus, max_retries=0)(_ray_execute)

    def submit(self, payload: dict):
        return self._fn.remote(payload)

    def wait(self, handles: list, timeout: float) -> list:
        ready, _ = self.ray.wait(handles, num_returns=1, timeout=timeout)
        if ready:
            more, _ = self.ray.wait(
                [h for h in handles if h not in ready],
                num_returns=len(handles) - len(ready),
                timeout=0,
            )
            ready += more
        return ready

    def result(self, handle) -> dict:
        from ray.exceptions import RayTaskError, WorkerCrashedError

        try:
            return self.ray.get(handle)
        except RayTaskError as e:
            cause = getattr(e, "cause", None)
            raise (cause if isinstance(cause, BaseException) else e) from None
        except WorkerCrashedError as e:
            raise WorkerLost(str(e)) from None

    @property
    def signal_received(self) -> int | None:
        """SIGTERM or SIGHUP, when one ended the driver (a local Ray instance's handler)."""
        return self._local.received if self._local is not None else None

    def close(self, cancel: bool = False) -> None:
        if self._local is not None:
            self._local.shutdown()
        elif self._started:
            self.ray.shutdown()
        self._started = False
