"""``python -m tests.chaos.run`` (``make chaos``): the bank workload under faults.

Options by environment: ``CHAOS_SECONDS`` (600), ``CHAOS_SEED`` (random, printed so a
failure can be replayed), ``CHAOS_CLIENTS`` (16), ``CHAOS_WALLETS`` (20),
``CHAOS_MIN_FAULTS`` (30); also ``CHAOS_SUMMARY_PATH`` (bench/results/chaos-latest.json)
and ``CHAOS_KEEP_RUN_DIR=1`` (keep the servers' data after a clean run).
Exit code: 0 when every check holds, 1 when one fails, 2 when the run could not be
carried out, 130 on Ctrl-C.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
from pathlib import Path
from types import FrameType

from tests.chaos.harness import DEFAULT_SUMMARY_PATH, ChaosConfig, SetupError, run_chaos
from tests.chaos.report import render
from walletd.adapters.embedded import EmbeddedServiceError


def _number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"chaos: {name}={raw!r} is not a number") from None
    if value < 0:
        raise SystemExit(f"chaos: {name} must not be negative")
    return value


def config_from_env() -> ChaosConfig:
    seed_text = os.environ.get("CHAOS_SEED", "").strip()
    if seed_text and not seed_text.isdigit():
        raise SystemExit(f"chaos: CHAOS_SEED={seed_text!r} is not a non-negative integer")
    summary_path = os.environ.get("CHAOS_SUMMARY_PATH", "").strip()
    return ChaosConfig(
        seed=int(seed_text) if seed_text else secrets.randbelow(2**31),
        seconds=_number("CHAOS_SECONDS", 600),
        clients=int(_number("CHAOS_CLIENTS", 16)),
        wallets=int(_number("CHAOS_WALLETS", 20)),
        min_faults=int(_number("CHAOS_MIN_FAULTS", 30)),
        summary_path=Path(summary_path) if summary_path else DEFAULT_SUMMARY_PATH,
        keep_run_dir=os.environ.get("CHAOS_KEEP_RUN_DIR", "") not in ("", "0"),
    )


def _interrupt_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C, so every child and server is stopped by PID."""
    raise KeyboardInterrupt


def main() -> int:
    config = config_from_env()
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    try:
        summary = run_chaos(config)
    except KeyboardInterrupt:
        print(f"chaos: interrupted (seed {config.seed}); everything started was stopped")
        return 130
    except (SetupError, EmbeddedServiceError, RuntimeError) as error:
        print(f"chaos: the run could not be carried out (seed {config.seed}): {error}")
        return 2
    print(render(summary), flush=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
