"""Decoder architectures: Wan-family teachers and students, LTX-Video teachers and students."""
