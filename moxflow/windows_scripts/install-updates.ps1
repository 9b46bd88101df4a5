# moxflow: download and install the chosen updates (by update ID) through the Windows Update
# API from the agent's SYSTEM process; each update's ResultCode and HResult.
# stdin: {"ids": ["<UpdateID>", ...]}   stdout: one JSON line; exit 3: a reboot comes first
$ErrorActionPreference = 'Stop'; $ProgressPreference = 'SilentlyContinue'
[Console]::OutputEncoding = [Text.Encoding]::UTF8
$in = [Console]::In.ReadToEnd() | ConvertFrom-Json
if ((New-Object -ComObject Microsoft.Update.SystemInfo).RebootRequired) {
    [ordered]@{ error = 'reboot-pending'; updates = @() } | ConvertTo-Json -Compress -Depth 5
    exit 3
}
$wanted = @(foreach ($id in $in.ids) { [string]$id })
$session = New-Object -ComObject Microsoft.Update.Session
$session.ClientApplicationID = 'moxflow'
$found = $session.CreateUpdateSearcher().Search('IsInstalled=0 and IsHidden=0')
$batch = New-Object -ComObject Microsoft.Update.UpdateColl
foreach ($u in $found.Updates) {
    if ($wanted -contains [string]$u.Identity.UpdateID) {
        if (-not $u.EulaAccepted) { $u.AcceptEula() }
        [void]$batch.Add($u)
    }
}
if ($batch.Count -eq 0) {
    [ordered]@{ error = 'nothing-to-install'; updates = @() } | ConvertTo-Json -Compress -Depth 5
    exit 4
}
$installer = $session.CreateUpdateInstaller()
if ($installer.IsBusy) {
    [ordered]@{ error = 'installer-busy'; updates = @() } | ConvertTo-Json -Compress -Depth 5
    exit 5
}
$downloader = $session.CreateUpdateDownloader()
$downloader.Updates = $batch
[void]$downloader.Download()
$installer.Updates = $batch
$result = $installer.Install()
$done = @(for ($i = 0; $i -lt $batch.Count; $i++) {
    $u = $batch.Item($i)
    $r = $result.GetUpdateResult($i)
    [ordered]@{
        id = [string]$u.Identity.UpdateID
        kb = @(foreach ($k in $u.KBArticleIDs) { 'KB' + $k })
        title = [string]$u.Title
        result_code = [int]$r.ResultCode
        hresult = '0x{0:X8}' -f [int]$r.HResult
        reboot_required = [bool]$r.RebootRequired
    }
})
[ordered]@{
    result_code = [int]$result.ResultCode
    hresult = '0x{0:X8}' -f [int]$result.HResult
    reboot_required = [bool]$result.RebootRequired
    updates = $done
} | ConvertTo-Json -Compress -Depth 5
exit 0
