"""Offline measurement: the harness binary, distractor corpora, per-stage latency,
reports and plots (installed as lateint.evaluation)."""
