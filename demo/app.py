"""Run the pixpref demo as a plain script (e.g. on a Hugging Face Space): ``python demo/app.py [CONFIG]``.

The UI is :mod:`pixpref.demo.app` and the models are :mod:`pixpref.demo.engine`; ``pixpref demo`` does
the same with more options.
"""

import sys

from pixpref.config import load_config
from pixpref.demo.cli import launch
from pixpref.demo.engine import DemoConfig, DemoEngine

if __name__ == "__main__":
    from pixpref.demo.app import create_demo

    config = load_config(sys.argv[1] if len(sys.argv) > 1 else None, DemoConfig)
    launch(create_demo(DemoEngine(config).load()), config, host="0.0.0.0")
