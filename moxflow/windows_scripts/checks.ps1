# moxflow: the state of services and listening TCP ports a verification asks about.
# stdin: {"services": ["Name"], "ports": [3389]}   stdout: one JSON line
$ErrorActionPreference = 'Stop'; $ProgressPreference = 'SilentlyContinue'
[Console]::OutputEncoding = [Text.Encoding]::UTF8
$in = [Console]::In.ReadToEnd() | ConvertFrom-Json
$services = @(foreach ($name in $in.services) {
    $s = Get-Service -Name ([string]$name) -ErrorAction SilentlyContinue
    $status = 'Missing'
    if ($s) { $status = [string]$s.Status }
    [ordered]@{ name = [string]$name; status = $status }
})
$ports = @(foreach ($port in $in.ports) {
    $l = Get-NetTCPConnection -State Listen -LocalPort ([int]$port) -ErrorAction SilentlyContinue
    [ordered]@{ port = [int]$port; listening = [bool]$l }
})
[ordered]@{ services = $services; ports = $ports } | ConvertTo-Json -Compress -Depth 5
exit 0
