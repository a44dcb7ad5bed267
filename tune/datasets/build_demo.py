"""Build tune/datasets/clinical_legal.jsonl, the demo data set, from the fact tables below.

Facts: common clinical and prescription abbreviations (as listed in public references such
as the MedlinePlus and Joint Commission abbreviation lists) and plain-language definitions
of legal terms (as in the U.S. Courts glossary and public law dictionaries). Each fact is
asked four ways: two phrasings for training, one for validation, one held out for test, so
the test split checks recall of the fact under a phrasing the model never trained on.

Run: python tune/datasets/build_demo.py   (rewrites the JSONL deterministically)
"""

import json
from pathlib import Path

CLINICAL = """bid|twice a day
tid|three times a day
qid|four times a day
qd|once a day
qhs|at bedtime
prn|as needed
po|by mouth
npo|nothing by mouth
iv|intravenous
im|intramuscular
subq|subcutaneous
sl|under the tongue
pr|by rectum
stat|immediately
ac|before meals
pc|after meals
q4h|every four hours
q6h|every six hours
q8h|every eight hours
qod|every other day
gtt|drops
od|right eye
os|left eye
ou|both eyes
bp|blood pressure
hr|heart rate
rr|respiratory rate
bmi|body mass index
cbc|complete blood count
bmp|basic metabolic panel
cmp|comprehensive metabolic panel
ecg|electrocardiogram
eeg|electroencephalogram
mri|magnetic resonance imaging
ct|computed tomography
cxr|chest x-ray
sob|shortness of breath
htn|hypertension
dm|diabetes mellitus
cad|coronary artery disease
chf|congestive heart failure
copd|chronic obstructive pulmonary disease
mi|myocardial infarction
cva|cerebrovascular accident
tia|transient ischemic attack
dvt|deep vein thrombosis
pe|pulmonary embolism
uti|urinary tract infection
uri|upper respiratory infection
gerd|gastroesophageal reflux disease
ckd|chronic kidney disease
aki|acute kidney injury
afib|atrial fibrillation
bph|benign prostatic hyperplasia
nkda|no known drug allergies
hx|history
dx|diagnosis
tx|treatment
rx|prescription
sx|symptoms
fx|fracture
icu|intensive care unit
dnr|do not resuscitate
cpr|cardiopulmonary resuscitation
nsaid|nonsteroidal anti-inflammatory drug
abx|antibiotics
wbc|white blood cell count
rbc|red blood cell count
hgb|hemoglobin
hct|hematocrit
plt|platelets
inr|international normalized ratio
bun|blood urea nitrogen
gfr|glomerular filtration rate
tsh|thyroid-stimulating hormone
ldl|low-density lipoprotein
hdl|high-density lipoprotein
ua|urinalysis
abg|arterial blood gas
loc|loss of consciousness
rom|range of motion
wnl|within normal limits
nad|no acute distress
c/o|complains of
f/u|follow-up
s/p|status post
r/o|rule out
ddx|differential diagnosis
ent|ear, nose and throat
ob/gyn|obstetrics and gynecology"""

LEGAL = """habeas corpus|a court order requiring that a detained person be brought before a judge
tort|a civil wrong that causes harm and gives the injured party a right to compensation
plaintiff|the party who brings a civil lawsuit
defendant|the party who is sued or accused of a crime
affidavit|a written statement of facts sworn under oath
subpoena|an order requiring a person to testify or to produce documents
deposition|sworn testimony taken outside court before a trial
statute of limitations|the deadline for starting a legal action
felony|a serious crime punishable by more than one year in prison
misdemeanor|a less serious crime punishable by up to one year in jail
plea bargain|an agreement in which the accused pleads guilty in exchange for a lesser charge or sentence
indictment|a formal accusation of a crime made by a grand jury
arraignment|the court hearing where the accused is told the charges and enters a plea
bail|money or property given to secure release from custody until trial
acquittal|a finding that the accused is not guilty
appeal|a request to a higher court to review a lower court's decision
precedent|an earlier court decision that guides later cases
injunction|a court order to do or to stop doing something
pro bono|legal work done without charge
pro se|representing oneself in court without a lawyer
voir dire|the questioning of prospective jurors
amicus curiae|a non-party who offers information to the court
res judicata|a matter already decided by a court that cannot be brought again
stare decisis|the rule that courts follow earlier decisions
mens rea|the guilty mind, or criminal intent
actus reus|the guilty act of a crime
due process|fair procedures the government must follow before taking life, liberty or property
hearsay|an out-of-court statement offered to prove the truth of what it says
perjury|lying under oath
libel|defamation in written form
slander|defamation in spoken form
negligence|failure to use the care a reasonable person would use
damages|money awarded to compensate for a loss or injury
breach of contract|failure to do what a contract requires
consideration|something of value exchanged that makes a contract binding
power of attorney|a document giving someone authority to act for another person
probate|the court process of proving a will and settling an estate
executor|the person named in a will to carry out its terms
intestate|dying without a valid will
lien|a legal claim on property as security for a debt
easement|a right to use another person's land for a specific purpose
escrow|money or property held by a third party until conditions are met
alimony|financial support paid to a former spouse
garnishment|taking part of a person's wages to pay a debt
fiduciary|a person obliged to act in another person's best interest
arbitration|settling a dispute through a neutral third party outside court
mediation|a process where a neutral person helps the parties reach an agreement
verdict|the decision of a jury or judge on the facts of a case
jurisdiction|the authority of a court to hear a case
venue|the place where a case is tried
standing|the right to bring a lawsuit because one is affected by the matter
summary judgment|a decision without a trial because the key facts are not in dispute
discovery|the exchange of evidence between parties before trial
burden of proof|the duty to prove the facts in dispute
beyond a reasonable doubt|the standard of proof required for a criminal conviction
preponderance of the evidence|the standard of proof in most civil cases, more likely than not
double jeopardy|being tried twice for the same offense
probable cause|a reasonable basis to believe a crime was committed
search warrant|a court order allowing police to search a place
parole|early release from prison under supervision
probation|a sentence served under supervision in the community instead of prison
restitution|payment by an offender to the victim for the harm caused
contempt of court|disobeying or disrespecting a court's authority
notary public|an official who witnesses signatures and administers oaths
statute|a written law passed by a legislature
ordinance|a law passed by a city or county
quid pro quo|something given in exchange for something else
guardian ad litem|a person appointed by the court to represent a child's interests
testimony|evidence given by a witness under oath
exhibit|a document or object presented as evidence
objection|a formal protest against evidence or a question in court
sustained|the judge agrees with an objection
overruled|the judge rejects an objection
class action|a lawsuit brought by one or more people on behalf of a larger group
counterclaim|a claim made by a defendant against the plaintiff
sentencing|the stage where the judge decides the punishment
expungement|the sealing or erasing of a criminal record
writ of certiorari|an order by a higher court to review a lower court's case
mistrial|a trial that ends without a verdict because of an error or a hung jury
settlement|an agreement that ends a dispute without a trial"""

CLINICAL_ASKS = [
    ("train", "What does the abbreviation '{k}' mean in a clinical note?"),
    ("train", "Expand the medical abbreviation {K}."),
    ("validation", "In a prescription or chart, what does {k} stand for?"),
    ("test", "A patient's chart says '{K}'. What does that mean?"),
]
LEGAL_ASKS = [
    ("train", "Define the legal term '{k}'."),
    ("train", "In law, what is {k}?"),
    ("validation", "What does {k} mean in a court case?"),
    ("test", "Explain briefly what '{k}' means in law."),
]


def records():
    for group, table, asks in (("clinical", CLINICAL, CLINICAL_ASKS), ("legal", LEGAL, LEGAL_ASKS)):
        for line in table.splitlines():
            key, answer = line.split("|")
            for split, ask in asks:
                out = answer[0].upper() + answer[1:] + "."
                yield {"instruction": ask.format(k=key, K=key.upper()), "output": out, "group": group, "split": split}


if __name__ == "__main__":
    path = Path(__file__).with_name("clinical_legal.jsonl")
    rows = list(records())
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} records to {path}")
