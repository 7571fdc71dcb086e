"""The trainer's full configuration schema, with defaults. Data only.

Every other config starts from ``base_config()`` and overrides fields; any key
not defined in the schema is a typo and is rejected. The schema and its
defaults live in the library (``optbench_jax/config.py``); this file re-exports
them so that config files can say ``from configs import base``.
"""

from optbench_jax.config import base_config  # pylint: disable=unused-import  (re-exported)
