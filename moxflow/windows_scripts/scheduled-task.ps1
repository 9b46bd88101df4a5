# moxflow: one scheduled task from its XML definition; the SHA-256 of the XML last
# registered is kept in C:\ProgramData\moxflow\tasks.json, so a second run changes nothing.
# stdin: {"name": "Backup games", "xml": "<?xml ...>"}   stdout: {items: [{item, status, detail}]}
$ErrorActionPreference = 'Stop'; $ProgressPreference = 'SilentlyContinue'
[Console]::OutputEncoding = [Text.Encoding]::UTF8
$in = [Console]::In.ReadToEnd() | ConvertFrom-Json
$name = [string]$in.name
$xml = [string]$in.xml
$item = 'task:' + $name
$sha = [BitConverter]::ToString([Security.Cryptography.SHA256]::Create().ComputeHash([Text.Encoding]::UTF8.GetBytes($xml))).Replace('-', '')
$store = 'C:\ProgramData\moxflow\tasks.json'
$known = @{}
if (Test-Path -LiteralPath $store) {
    $saved = Get-Content -LiteralPath $store -Raw | ConvertFrom-Json
    foreach ($p in $saved.PSObject.Properties) { $known[$p.Name] = [string]$p.Value }
}
$exists = [bool](Get-ScheduledTask -TaskName $name -ErrorAction SilentlyContinue)
$status = 'present'; $detail = ''
if (-not $exists -or $known[$name] -ne $sha) {
    try {
        Register-ScheduledTask -TaskName $name -Xml $xml -Force | Out-Null
        $known[$name] = $sha
        New-Item -ItemType Directory -Force -Path (Split-Path -Parent $store) | Out-Null
        $known | ConvertTo-Json -Compress | Set-Content -LiteralPath $store -Encoding UTF8
        $status = 'installed'
        if ($exists) { $status = 'updated' }
    } catch { $status = 'failed'; $detail = $_.Exception.Message }
}
[ordered]@{ items = @([ordered]@{ item = $item; status = $status; detail = $detail }) } | ConvertTo-Json -Compress -Depth 5
exit 0
