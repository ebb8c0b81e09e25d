import asyncio

from hypothesis import HealthCheck, given, settings

from engine.offline import OfflineCall
from replay.whatif import what_if
from tests.test_properties import calls


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(calls())
def test_identity(call):
    flow, script = call
    result = asyncio.run(OfflineCall(flow, script).run())
    r = what_if(flow, result.log)
    assert r.notes == [] and r.stopped is None
    for i, (a, b) in enumerate(zip(r.log, result.log)):
        assert a == b, (i, a, b)
    assert len(r.log) == len(result.log)
