"""Hosted endpoints: the SageMaker container protocol on Ray Serve (importing this package does not import Ray).

`protocol` decodes requests and encodes responses (numpy/pyarrow only), `app` holds the Serve deployments,
`endpoint` deploys, lists and deletes endpoints by name.
"""
