"""Processors per data type; importing this package registers them all (kind "processor").

One import per module, so that each family's module can be added on its own line.
"""
# ruff: noqa: F401, I001

import modaloom.data.processors.base
import modaloom.data.processors.bert
import modaloom.data.processors.lm
import modaloom.data.processors.seq2seq
import modaloom.data.processors.image_text
import modaloom.data.processors.speech
import modaloom.data.processors.vision
