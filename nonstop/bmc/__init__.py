"""The lab BMC: a Redfish service per host whose power-off really kills the host's processes."""
