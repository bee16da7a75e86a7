"""The lab: a whole cluster on one machine, built from network namespaces.

    topology.plan(...)  ->  Topology (pure data)
    builder.Lab(topology).up() / builder.down(name)   fabric, datastore, agents
    pods.LabPods(name, client)                        pods wired through tabby-cni
    probe.probe(state, ...)                           who reaches whom
    state.load(name)                                  what a running lab made
"""
