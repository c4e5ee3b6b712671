"""``edgeclip watch``: many cameras in one process, zero-shot states of their regions, events on change.

    import edgeclip
    from edgeclip.watch import Watcher, load_config, plan_threads

    config = load_config("watch.yaml")                    # ConfigError names file, line and key
    budget = plan_threads(len(config.cameras), config.options)
    clf = edgeclip.load(config.bundle or "bundle", threads=budget.encoder)
    Watcher(clf, config).run()                            # until the sources end or request_stop()

Each camera (any source ``edgeclip stream`` accepts) has named regions (rectangles or polygons) and, per
region, states written as text; their embeddings are made on the device at start with the bundle's text
encoder and cached. Regions are classified on motion (default), on every frame, or every N seconds; every due
region of every camera goes into one encoder call per tick. States are smoothed, need a margin and a minimum
dwell, and are sent on change to JSON lines, MQTT (Home Assistant discovery) and webhooks, each through its
own bounded queue. ``docs/watch.md`` has a worked configuration. Needs ``pip install 'edgeclip[watch]'``
(PyYAML, paho-mqtt). This package never imports torch.
"""
from __future__ import annotations

from .config import (MotionSettings, MqttSettings, RegionSettings, WatchConfig, WatchOptions, WebhookSettings,
                     load_config, parse_config, parse_duration)
from .watcher import CLEAN_END, ThreadBudget, Watcher, plan_threads

__all__ = ["CLEAN_END", "MotionSettings", "MqttSettings", "RegionSettings", "ThreadBudget", "WatchConfig",
           "WatchOptions", "Watcher", "WebhookSettings", "load_config", "parse_config",
           "parse_duration", "plan_threads"]
