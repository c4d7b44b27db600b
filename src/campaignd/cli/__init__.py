"""`campaignctl`, the command-line client of the campaignd gRPC API, by concern.

`connection` (target, client, errors), `arguments` (value parsers and shared options), `render`
(JSON, tables, progress drawing), one module per command group (`campaigns`, `channels`,
`reports`, `contacts`, `csv_import`, `lists`, `segments`, `suppressions`), and `main` (the command
table and the entry point).
"""
