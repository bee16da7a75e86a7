"""BGP with BIRD: render bird.conf, run and reload BIRD, read its sessions back.

    config.render_bird_conf(snapshot, node) -> str   pure; tabby.calc.bird decides what
    daemon.Bird(directory)                            check, swap, reload, start, supervise
    control.BirdControl(socket)                       BIRD's control protocol (birdc's)
    status.node_status(socket) -> NodeStatus          the sessions, for ``tabby node status``
    controller.BirdController                         applies DesiredState.bird (``--bgp bird``)
"""
