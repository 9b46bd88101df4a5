# moxflow: the Windows updates not yet installed, through the Windows Update API (as SYSTEM).
# stdin: {"drivers": false}   stdout: one JSON line {reboot_required, updates: [...]}
$ErrorActionPreference = 'Stop'; $ProgressPreference = 'SilentlyContinue'
[Console]::OutputEncoding = [Text.Encoding]::UTF8
$in = [Console]::In.ReadToEnd() | ConvertFrom-Json
$criteria = "IsInstalled=0 and IsHidden=0 and Type='Software'"
if ($in.drivers -eq $true) { $criteria = 'IsInstalled=0 and IsHidden=0' }
$session = New-Object -ComObject Microsoft.Update.Session
$session.ClientApplicationID = 'moxflow'
$found = $session.CreateUpdateSearcher().Search($criteria)
$updates = @(foreach ($u in $found.Updates) {
    [ordered]@{
        id = [string]$u.Identity.UpdateID
        kb = @(foreach ($k in $u.KBArticleIDs) { 'KB' + $k })
        title = [string]$u.Title
        size = [int64]$u.MaxDownloadSize
        categories = @(foreach ($c in $u.Categories) { [string]$c.Name })
        reboot = [int]$u.InstallationBehavior.RebootBehavior
        downloaded = [bool]$u.IsDownloaded
        released = $u.LastDeploymentChangeTime.ToUniversalTime().ToString('o')
    }
})
$pending = [bool](New-Object -ComObject Microsoft.Update.SystemInfo).RebootRequired
[ordered]@{ reboot_required = $pending; updates = $updates } | ConvertTo-Json -Compress -Depth 5
exit 0
