# Reference for the bivariate random-intercept model (no random scale) of
# subjects.csv: nlme::lme by maximum likelihood with a residual variance
# function per subject (varIdent x varExp on prior), an unstructured
# within-student correlation (corSymm) and correlated school intercepts.
# Run: Rscript nlme_reference.R   (writes nlme_reference.csv)
library(nlme)
wide <- read.csv("subjects.csv")
long <- rbind(
  data.frame(school = wide$school, student = wide$student, prior = wide$prior,
             subject = "english", k = 1L, score = wide$english),
  data.frame(school = wide$school, student = wide$student, prior = wide$prior,
             subject = "maths", k = 2L, score = wide$maths)
)
long <- long[!is.na(long$score), ]
long <- long[order(long$school, long$student, long$k), ]
long$subject <- factor(long$subject, levels = c("english", "maths"))
fit <- lme(score ~ 0 + subject + subject:prior,
           random = list(school = pdSymm(~ 0 + subject)),
           weights = varComb(varIdent(form = ~ 1 | subject), varExp(form = ~ prior | subject)),
           correlation = corSymm(form = ~ k | school / student),
           data = long, method = "ML",
           control = lmeControl(maxIter = 500, msMaxIter = 500, tolerance = 1e-10,
                                msTol = 1e-12, niterEM = 100))
b <- fixef(fit)
sigma <- fit$sigma
delta <- coef(fit$modelStruct$varStruct$A, unconstrained = FALSE, allCoef = TRUE)
texp <- coef(fit$modelStruct$varStruct$B, unconstrained = FALSE, allCoef = TRUE)
rho <- coef(fit$modelStruct$corStruct, unconstrained = FALSE)
G <- getVarCov(fit)
out <- data.frame(
  quantity = c("llf", "beta_english_Intercept", "beta_english_prior", "beta_maths_Intercept",
               "beta_maths_prior", "tau_english_Intercept", "tau_english_prior",
               "tau_maths_Intercept", "tau_maths_prior", "residual_corr",
               "var_u_english", "cov_u", "var_u_maths"),
  value = c(as.numeric(logLik(fit)), b["subjectenglish"], b["subjectenglish:prior"],
            b["subjectmaths"], b["subjectmaths:prior"],
            2 * log(sigma * delta["english"]), 2 * texp["english"],
            2 * log(sigma * delta["maths"]), 2 * texp["maths"], rho[1],
            G[1, 1], G[1, 2], G[2, 2])
)
write.csv(out, "nlme_reference.csv", row.names = FALSE)
print(out, digits = 10)
