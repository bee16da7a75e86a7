"""Services: tabby's replacement for kube-proxy.

    view.py        Service + EndpointSlices in a Snapshot -> one ``PortView`` per
                   service port and family (frontends, usable backends)   [pure]
    nft.py         PortViews -> the ``svc-*`` part of the ``inet tabby`` table:
                   ``ServiceRules(node).part(snapshot)``, one per node, its
                   shares kept as instance state (the node calculator's)   [pure]
    shares.py      each service's share of that part, remembered between passes
                   and merged by buckets (10k services, one change: cheap)
    bgp.py         /32 (/128) announcements for externalTrafficPolicy Local, for
                   ``tabby.calc.bird``'s origins                             [pure]
    controller.py  the endpoints controller's logic: Services + Pods -> desired
                   EndpointSlices; ClusterIP / NodePort / LoadBalancer IP
                   allocation                                               [pure]

The lab runs the controller (``tabby.lab.services``) whenever Services or Pods
are applied or deleted; a real cluster's controllers would write the same
objects.
"""
