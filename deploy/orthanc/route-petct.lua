-- Auto-routing rule: when a study is stable (StableAge seconds without a new instance) and
-- holds both a PET (PT) and a CT series, send those series to the nodestage node.
--
-- * Only CT and PT series are sent: the node's own results (SEG, SR, SC/OT) that come back
--   into the same study are never routed back to it.
-- * Each routed series is marked (user metadata RoutedToNodestage, declared in orthanc.json),
--   so a study that becomes stable again (e.g. after the results arrive) is not sent twice;
--   a series that arrives later is still routed on its own.
-- * The modality "nodestage" (AE NODESTAGE, port 11112) is declared in orthanc.json, and the
--   node's config lists Orthanc's AE (ORTHANC) in security.allowed_calling_aets.

local TARGET = 'nodestage'
local ROUTED = 'RoutedToNodestage'

-- the series' metadata names (GET /series/{id}/metadata lists them); asking for a missing
-- entry directly would log an error in Orthanc for every series not yet routed
function IsRouted(seriesId)
  for _, name in ipairs(ParseJson(RestApiGet('/series/' .. seriesId .. '/metadata'))) do
    if name == ROUTED then
      return true
    end
  end
  return false
end

function OnStableStudy(studyId, tags, metadata)
  local series = ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))
  local hasPet, hasCt = false, false
  local toSend = {}
  for _, s in ipairs(series) do
    local modality = s['MainDicomTags']['Modality']
    if modality == 'PT' or modality == 'CT' then
      if modality == 'PT' then hasPet = true else hasCt = true end
      if not IsRouted(s['ID']) then
        table.insert(toSend, s['ID'])
      end
    end
  end
  if not (hasPet and hasCt) or #toSend == 0 then
    return
  end
  print('nodestage routing: study ' .. studyId .. ', ' .. #toSend .. ' PET/CT series to ' .. TARGET)
  local body = { Resources = toSend, Synchronous = true }
  local ok, err = pcall(RestApiPost, '/modalities/' .. TARGET .. '/store', DumpJson(body, true))
  if not ok then
    print('nodestage routing failed for study ' .. studyId .. ': ' .. tostring(err))
    return
  end
  for _, id in ipairs(toSend) do
    RestApiPut('/series/' .. id .. '/metadata/' .. ROUTED, 'yes')
  end
end
