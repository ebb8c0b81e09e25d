"""The simulated world: calls run on a virtual clock, with no network and no real time.

``sim.world`` (the clock, its pending events, the phone line) imports only engine (no adapter) and is shared by
every driver that runs a machine in virtual time: ``sim.offline`` (a scripted caller and providers) and
``replay.whatif`` (a logged call under other parameters). ``sim.offline`` also uses the local providers'
pure scripted LLM (adapters/scripted.py), so an offline call and a live local call answer alike.
"""
