"""The personalization demo: :mod:`pixpref.demo.engine` (models, no gradio) and :mod:`pixpref.demo.app` (UI)."""
