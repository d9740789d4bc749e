-- Argo CD health of a dga-operator DgaModel (dgaoperator.io/v1alpha1).
-- Install: argocd-cm key resource.customizations.health.dgaoperator.io_DgaModel (see README).
-- Reads the same fields, in the same order, as kstatus (Flux) does, so both tools agree.
-- Argo CD itself reports an object being deleted as Progressing before this runs.
local hs = {}
local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the dga-operator to report"
  return hs
end
local generation = obj.metadata.generation
local observed = status.observedGeneration
if generation ~= nil and observed ~= nil and observed ~= generation then
  hs.status = "Progressing"
  if observed < 0 then
    hs.message = "Waiting for the dga-operator to report"
  else
    hs.message = "Generation " .. generation .. " not yet seen by the dga-operator"
  end
  return hs
end
local conditions = {}
if status.conditions ~= nil then
  for _, c in ipairs(status.conditions) do
    conditions[c.type] = c
  end
end
local function say(c)
  if c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return c.type .. " is " .. c.status
end
local stalled = conditions["Stalled"]
if stalled ~= nil and stalled.status == "True" then
  -- suspend: true with changes held back: a person paused it on purpose.
  if stalled.reason == "Suspended" then
    hs.status = "Suspended"
  else
    hs.status = "Degraded"
  end
  hs.message = say(stalled)
  return hs
end
local reconciling = conditions["Reconciling"]
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = say(reconciling)
  return hs
end
local ready = conditions["Ready"]
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = say(ready)
  return hs
end
hs.status = "Progressing"
if ready ~= nil then
  hs.message = say(ready)
else
  hs.message = "Waiting for the dga-operator to report"
end
return hs
