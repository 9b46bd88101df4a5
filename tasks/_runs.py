"""What the Prefect server says of a flow run that left a mark (a host lock, a scratch
guest): whether it is still running."""

from __future__ import annotations

import uuid


def flow_run_alive(flow_run_id: str | None) -> bool:
    """Whether the Prefect flow run that holds a host's lock is still running."""
    if not flow_run_id:
        return False
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(uuid.UUID(flow_run_id))
    except ObjectNotFound:
        return False
    except (ValueError, TypeError):
        return False
    except Exception:  # the API is unreachable: assume the run is alive, never break a lock
        return True
    return run.state is not None and not run.state.is_final()
