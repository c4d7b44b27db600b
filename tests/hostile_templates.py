"""Templates that a limit must stop: loops that would render for hours, output that would fill memory."""

# Python-level loops (99,999² iterations) that write nothing: they hit the time limit whatever the
# machine's speed, never the memory one.
NESTED_LOOPS = "{% for a in range(99999) %}{% for b in range(99999) %}{% set c = b %}{% endfor %}{% endfor %}"
# A gigabyte of output from a template of 22 characters.
GIGABYTE = "{{ 'x'.ljust(10**9) }}"
