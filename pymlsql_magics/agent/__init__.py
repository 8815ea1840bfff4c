"""The command line's warm path: a per-user background agent that keeps what a command costs to set up.

Each `pymlsql` command that calls ECS loads the SDK and paramiko and opens SSH connections, which
takes a second before the first byte of work; a shell script calling it dozens of times pays that
each time. The agent keeps all of it loaded and open between commands, as OpenSSH's ControlMaster
keeps a connection:

- `pymlsql` (the thin client, `_client`) hands the command line, its working directory and its
  own stdin, stdout and stderr (the descriptors themselves, over a Unix socket) to the agent, and
  waits for the exit status. Ctrl-C is passed on as SIGINT. No secret crosses the socket: the
  agent was started with the user's environment, and an agent serves only clients whose
  environment (credentials included) is the same (`_place`).
- The agent (`_dispatcher`) hands each command to a worker process of its own (`_worker`), forked
  from it with everything imported, which runs the very same `pymlsql_magics.cli.main` on the
  client's descriptors, in its main thread: output, exit status, Ctrl-C and errors are those of
  the command run without the agent. A worker runs one command at a time and keeps its SSH
  connections open for the next; commands at once run in workers at once.
- The agent exits after `PYMLSQL_AGENT_IDLE` (default 10 minutes) without work; `pymlsql agent
  status` and `pymlsql agent stop` show and end it; `PYMLSQL_AGENT=0` turns it off.
"""
