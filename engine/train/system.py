"""The engine process and its machine, for `system` events: CPU per core, the process's own CPU and resident memory,
and per device the memory JAX reports (what it preallocated included) plus, on NVIDIA GPUs when NVML can be loaded
(the optional `nvidia-ml-py` package), utilisation, power and temperature."""

from __future__ import annotations

import os
import socket
from typing import Any


class SystemSampler:
    """Takes snapshots; CPU figures are averages since the previous snapshot (the first covers the start-up)."""

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._proc = psutil.Process()
        self._proc.cpu_percent(None)
        psutil.cpu_percent(percpu=True)
        self._nvml: Any = None
        self._nvml_tried = False
        self.host = socket.gethostname()

    def _nvml_devices(self) -> list[dict[str, Any]]:
        """Utilisation, power and temperature per NVIDIA GPU, in NVML's order; [] without NVML."""
        if not self._nvml_tried:
            self._nvml_tried = True
            try:
                import pynvml  # type: ignore[import-not-found]

                pynvml.nvmlInit()
                self._nvml = pynvml
            except Exception:  # noqa: BLE001 - no NVML: no such figures
                self._nvml = None
        nv = self._nvml
        if nv is None:
            return []
        out = []
        try:
            count = nv.nvmlDeviceGetCount()
        except Exception:  # noqa: BLE001
            return []
        for i in range(count):
            entry: dict[str, Any] = {}
            try:
                h = nv.nvmlDeviceGetHandleByIndex(i)
            except Exception:  # noqa: BLE001
                out.append(entry)
                continue
            for key, get in (("utilization", lambda: float(nv.nvmlDeviceGetUtilizationRates(h).gpu)),
                             ("power_w", lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000.0),
                             ("temperature_c", lambda: float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)))):
                try:
                    entry[key] = get()
                except Exception:  # noqa: BLE001 - a figure this device does not report
                    pass
            out.append(entry)
        return out

    def snapshot(self, step: int, memory: list[dict[str, Any]]) -> dict[str, Any]:
        """The `system` event's fields; `memory` is the step event's per-device list (engine.train.memory)."""
        ps = self._psutil
        try:
            rss = int(self._proc.memory_info().rss)
            threads = int(self._proc.num_threads())
        except Exception:  # noqa: BLE001
            rss, threads = None, None
        devices = [dict(d) for d in memory]
        nvml = self._nvml_devices() if any(str(d.get("device", "")).startswith(("cuda", "gpu")) for d in devices) \
            else []
        gpus = [d for d in devices if str(d.get("device", "")).startswith(("cuda", "gpu"))]
        for dev, extra in zip(gpus, nvml):
            dev.update(extra)
        return {"step": step, "pid": os.getpid(), "host": self.host, "cpu_count": ps.cpu_count() or 0,
                "cpu_percent": [float(x) for x in ps.cpu_percent(percpu=True)],
                "process_cpu_percent": float(self._proc.cpu_percent(None)), "rss": rss, "threads": threads,
                "devices": devices}
