"""The outside world: LLM client, experiment files, child processes and log parsing.

Nodes call these modules; nothing here knows about LangGraph, so each piece is testable alone.
"""
